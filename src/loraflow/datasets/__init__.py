"""Training data: formats (Alpaca, ShareGPT, raw novels), chunking, prepare."""
