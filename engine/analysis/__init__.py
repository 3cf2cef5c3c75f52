"""Measurements over the user's own tensors before training: Fisher rank maps (``sidestep analyze``, PP++)
and gradient-sensitivity module selection (``sidestep estimate``). Runs in the engine process, above the
training loop's building blocks and below the process entry that streams its progress."""
