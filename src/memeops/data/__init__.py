"""Data layer: SynthMeme, loaders for public meme formats, consolidation, validation."""
