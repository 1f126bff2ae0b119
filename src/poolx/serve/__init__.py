"""`poolx serve`: an HTTP embedding server (OpenAI and text-embeddings-inference APIs) with dynamic batching."""
