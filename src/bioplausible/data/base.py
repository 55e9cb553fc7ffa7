"""The contract every data reader fulfils, and the error they raise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

class DataError(ValueError):
    """A data file is missing, truncated or malformed. The message names the file."""


class DatasetMissing(DataError):
    """A data set is needed but not on disk; the message says how to fetch it."""


@dataclass
class RawData:
    """What a format reader returns: images as float32 in [0, 1], shape (N, C, H, W);
    labels as int64 in [0, num_classes). `x_test`/`y_test` are None when the source has
    no official test split (a fixed split is then made by `bioplausible.data.load`)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int

    def __post_init__(self) -> None:
        for name in ("x_train", "x_test"):
            x = getattr(self, name)
            if x is not None and (x.ndim != 4 or x.dtype != np.float32):
                raise DataError(f"{name} must be float32 (N, C, H, W), got {x.dtype} {x.shape}")
        if len(self.x_train) != len(self.y_train):
            raise DataError(
                f"{len(self.x_train)} training images but {len(self.y_train)} labels"
            )
        if self.x_test is not None and len(self.x_test) != len(self.y_test):
            raise DataError(f"{len(self.x_test)} test images but {len(self.y_test)} labels")
