"""Every Lightning callback of the project, one module per concern; ``conf/callbacks/*.yaml`` names them.

- :mod:`.tensorboard`: figures and scalars for TensorBoard (conv1 kernels, augmented samples, the validation
  confusion matrix, per-class accuracy) and the HPARAMS session with the final metrics;
- :mod:`.ema`: an exponential moving average of the weights (``callbacks=ema``);
- :mod:`.signals`: SIGTERM/SIGINT stop after the running step with a checkpoint;
- :mod:`.checkpoint`: ModelCheckpoint restoring and deleting only files inside its own folder;
- :mod:`.debug`: the layer table at fit start, per-rank sample indices under DDP.
"""
