"""Every command's options as typed dataclasses, grouped by concern (see :mod:`histoscan.ranges` for `opt`).

- :mod:`.model`: which model and where it runs (MODEL, --device, --backend) and how patches are scored
  (evaluate, predict, explain);
- :mod:`.slide`: the model side of `slide` / `slides` and the cohort engine (the mapping itself is
  :class:`histoscan.slide.tiles.SlideOptions`);
- :mod:`.training`: what train / cv / tune add to :class:`histoscan.config.TrainConfig`;
- :mod:`.data`: prepare, download, bench; :mod:`.stain`: stain fit / apply; serving is
  :class:`histoscan.serve.settings.ServeSettings`.

Each is checked when built (the same one-line errors from Python and the CLI) and is the CLI's only
declaration of its options. Stdlib only (and histoscan.config / ranges): the CLI imports them for `--help`.
"""
