"""The runs behind Muon's settings: train.py's stage 1 (or stage 2) with one setting changed.

    OMP_NUM_THREADS=1 python results/experiments/muon_sweep.py NAME OUT_DIR [train.py flags ...]

NAME picks a variant below: constants of train.py replaced for this run, and flags added
to the ones given; the rest is train.py's main() with its defaults, so its history.csv is
the run that train.py would make with those settings. Variants judged by test MSE.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import train  # noqa: E402

MATRIX_LAYERS = ("encoder.3", "decoder.1")  # the 3x3-to-1x1 convolution and its transpose
EDGE_LAYERS = ("encoder.0.0", "decoder.4.1")  # 1 -> 16 and 16 -> 1 channels
# name: (train.py constants, flags). The first settings tried ("first") were train.py's
# defaults of then; each variant changes them.
FIRST = {"ADAMW_LAYERS": (), "ADAMW_LR_RATIO": 0.25}
VARIANTS = {
    "first_settings": ({}, []),
    "edges_on_adamw": ({"ADAMW_LAYERS": EDGE_LAYERS}, []),
    "matrix_layers_on_adamw": ({"ADAMW_LAYERS": MATRIX_LAYERS}, []),
    "lr0.04": ({}, ["--lr", "0.04"]),
    "lr0.01": ({}, ["--lr", "0.01"]),
    "adamw_lr_ratio0.5": ({"ADAMW_LR_RATIO": 0.5}, []),
    "adamw_lr_ratio0.1": ({"ADAMW_LR_RATIO": 0.1}, []),
    "wd0": ({}, ["--weight-decay", "0"]),
    "wd0.1": ({}, ["--weight-decay", "0.1"]),
    "momentum0.9": ({"MUON_MOMENTUM": 0.9}, []),
    "ema0.998": ({}, ["--ema-decay", "0.998"]),
    "ema0.9995": ({}, ["--ema-decay", "0.9995"]),
    "edges_on_adamw+adamw_lr_ratio0.5": ({"ADAMW_LAYERS": EDGE_LAYERS, "ADAMW_LR_RATIO": 0.5}, []),
    "adamw_lr_ratio1": ({"ADAMW_LR_RATIO": 1.0}, []),
    "adamw_lr_ratio2": ({"ADAMW_LR_RATIO": 2.0}, []),
    "edges_on_adamw+adamw_lr_ratio1": ({"ADAMW_LAYERS": EDGE_LAYERS, "ADAMW_LR_RATIO": 1.0}, []),
    "adamw_lr_ratio1+ema0.998": ({"ADAMW_LR_RATIO": 1.0}, ["--ema-decay", "0.998"]),
    "adamw_lr_ratio1+wd0": ({"ADAMW_LR_RATIO": 1.0}, ["--weight-decay", "0"]),
}


def main():
    name, out_dir, *flags = sys.argv[1:]
    constants, variant_flags = VARIANTS[name]
    for constant, value in {**FIRST, **constants}.items():
        setattr(train, constant, value)
    print(f"variant {name}: {constants} {variant_flags}", flush=True)
    return train.main(["--out-dir", out_dir, *flags, *variant_flags])


if __name__ == "__main__":
    sys.exit(main())
