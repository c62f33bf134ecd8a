"""Testing a LoRA right after training: `<lora:name:w>` prompts, generation, weight x epoch grids.

Data flows: prompt -> `tags` (split off the LoRA tags) -> `library` (find the files in the Lora
folder, by file name or `ss_output_name` alias) -> `apply` (merge the LoRA deltas into the loaded
model, restore the exact weights afterwards) -> `generate` (denoise with a chosen sampler) ->
`grid` (rows = saved epochs/steps, columns = weights) -> `infotext` (the PNG's "parameters" text).

`grid` takes any `render(prompt_with_tags, seed, settings) -> PIL.Image`, so the WebUI can plug in
its own txt2img while the standalone app uses `generate.DiffusersRenderer`. Importing this package,
`tags`, `settings`, `infotext` or `grid` imports no torch.
"""

from .settings import SAMPLERS, GenerationSettings
from .tags import LoraTag, ParsedPrompt, format_tag, parse_prompt

__all__ = ["SAMPLERS", "GenerationSettings", "LoraTag", "ParsedPrompt", "format_tag", "parse_prompt"]
