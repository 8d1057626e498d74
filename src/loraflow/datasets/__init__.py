"""Training data: records (file reading), formats (Alpaca, ShareGPT, raw), encode, prepare."""
