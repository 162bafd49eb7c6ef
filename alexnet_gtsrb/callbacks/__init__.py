"""Every Lightning callback of the project, one module per concern; ``conf/callbacks/*.yaml`` names them."""
