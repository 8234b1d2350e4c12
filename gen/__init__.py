"""What generates: conditioners (CLAP), priors (diffusion UNet, token transformers), the semantic
tokenizer and their configs. No file I/O and no CLI here."""
