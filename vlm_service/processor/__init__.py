"""CPU-side request processing: image decode/resize/patchify, chat template, placeholder expansion, MRoPE positions.

Import the submodules directly (processor, image, vision, positions, tokenizer); this package file imports nothing
heavy so that `vlm_service.processor.tokenizer` stays cheap for the demo-checkpoint builder.
"""
