"""The built-in demo model: a small DiT with the ACE-Step 1.5 decoder's module tree and interface, its
remote-code files (copied into the checkpoint folder it writes), and a demo VAE and text encoder."""
