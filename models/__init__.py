"""The shipped model folders (config.json + safetensors), installed as package data; no code.

This file makes models/ the package `soundsmith.models` so that a wheel carries the folders (their names
have hyphens, so they are package data, not packages). Code finds them through
`soundsmith.core.paths.shipped_models()`, never by importing this package.
"""
