"""The nas_common conformance suite at micro scale (seconds per search), with a MACs budget."""
from nas_common.methods import Budget
from nas_common.testing import SearchMethodTests

MICRO = {"space": "supnet-m", "width": 4, "blocks": [1, 1, 1], "stem": 4, "epochs": 2, "batch_size": 16,
         "val_fraction": 0.25, "num_samples": 16, "score_batch": 64, "uniform_baseline": False, "cutout": 0}


class TestPosteriorConformance(SearchMethodTests):
    method = "posterior-nas"
    micro = MICRO
    # the micro supernet: 1.60M MACs with every channel, 0.13M fixed; posterior masks (p ~ 0.1) cost ~1.4M,
    # so this budget rejects part of them before scoring
    budget = Budget(macs=1.4e6)
