"""modules.paths / paths_internal: where the WebUI keeps its files (tests point these at tmp dirs)."""

import os

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = script_path  # --data-dir
models_path = os.path.join(data_path, "models")  # --models-dir (1.10)
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
