"""Small mechanisms shared across the package, each written once (the layout page says what each module holds)."""
