"""Corpus synthesis, dataset readers, losses, discriminators and the shared training pieces; one flat
`accelerate` training loop per component."""
