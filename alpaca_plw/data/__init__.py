"""The data toolkit: load and validate records, measure token lengths once, then compute statistics
(R_g and the guide's PLW), build short-completion variants, or write per-token loss weights.

Needs no torch and never imports `alpaca_plw.train` or `alpaca_plw.cli`.
"""
