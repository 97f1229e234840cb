"""ds_1 without the `center` jitter (docs/solution.md §5): used by cfg_1, cfg_3 and cfg_4."""
from data import ds_1


class CustomDataset(ds_1.CustomDataset):
    center_jitter = False
