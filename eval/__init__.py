"""Embedding models, Frechet distance, CLAP score, classifier metrics, the harness and its reports."""
