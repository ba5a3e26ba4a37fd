"""Export a run or model to where people run models: merged weights, GGUF, Ollama and vLLM."""
