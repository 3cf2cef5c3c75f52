"""Audio in: the dataset builder (audio folder + sidecar text -> dataset.json) and preprocessing
(audio -> VAE latents + text/lyric embeddings as training tensors)."""
