"""SynthMeme: a generated meme benchmark whose labels follow documented rules (docs/synthmeme.md).

``world`` holds the rule tables, ``rules`` turns latents into labels and explanations, ``render``
draws images, ``generate`` plans, renders in parallel and writes the data set. Entry point:
:func:`memeops.data.synth.generate.generate`.
"""
