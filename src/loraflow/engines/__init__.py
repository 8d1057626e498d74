"""Generation backends: the local transformers engine and Ollama."""
