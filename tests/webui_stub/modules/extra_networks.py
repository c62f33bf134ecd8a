"""modules.extra_networks as processing uses it in the WebUI 1.10: `parse_prompts` cuts every
`<name:args>` tag out of the prompts and returns the tags by network, `activate` hands them to the
networks (here only the built-in Lora network, stood in by `_activate_lora`), `deactivate` after.

The Lora stand-in finds a file in the Lora folder by stem, as the built-in loader does (the real one
also matches aliases), prints "Networks not found: ..." for unknown names and draws the image
without them, and adds "Lora hashes" to `p.extra_generation_params` (the setting
`lora_add_hashes_to_infotext`, on by default)."""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict

from modules import shared

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts):
    res, extra_data = [], None
    for prompt in prompts:
        updated_prompt, parsed_extra_data = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed_extra_data
        res.append(updated_prompt)
    return res, extra_data


def _lora_files() -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(shared.cmd_opts.lora_dir):
        for f in sorted(files):
            if f.endswith(".safetensors"):
                found.setdefault(f[: -len(".safetensors")], os.path.join(root, f))
    return found


def _activate_lora(p, params_list) -> None:
    files, active, missing = _lora_files(), [], []
    for params in params_list:
        name = params.positional[0]
        weight = float(params.positional[1]) if len(params.positional) > 1 else 1.0
        if name not in files:
            missing.append(name)
            continue
        with open(files[name], "rb") as fh:
            active.append((name, weight, hashlib.sha256(fh.read()).hexdigest()[:12]))
    if missing:
        print(f"Networks not found: {', '.join(missing)}")
    p.active_loras = active  # stand-in for the weights the real loader patches into the model
    hashes = [f"{name}: {h}" for name, _, h in active]
    if hashes and shared.opts.data.get("lora_add_hashes_to_infotext", True):
        p.extra_generation_params["Lora hashes"] = ", ".join(hashes)


def activate(p, extra_network_data) -> None:
    p.active_loras = []
    for name, params_list in (extra_network_data or {}).items():
        if name == "lora":
            _activate_lora(p, params_list)
        else:
            print(f"Skipping unknown extra network: {name}")


def deactivate(p, extra_network_data) -> None:
    p.active_loras = []
