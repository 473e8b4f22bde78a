"""The data toolkit: load and validate records, measure token lengths once, then compute statistics
(R_g and the guide's PLW), build short-completion variants, or write per-token loss weights.

The flow (`pipeline`) and the shared steps sit at the top; the rooms are `reading/` (sources and
records), `alpaca/` and `chat/` (the two paths), `weights_dir/` (the weights folder on disk) and
`outputs/` (safe writing). Needs no torch and never imports `alpaca_plw.train` or `alpaca_plw.cli`.
"""
