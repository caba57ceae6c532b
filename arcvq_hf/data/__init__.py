"""Image data: the built-in offline sets (`builtin`), the photo corpus (`photo_corpus`) and the Trainer glue that
turns images into `pixel_values` (`transforms`)."""
