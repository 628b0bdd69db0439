import os
import sys

import torch

# The suite is small-model work: one thread avoids the 2-thread stalls seen on the CI machine.
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))
# torch.testing.assert_close imports torch.distributed.tensor on its first call (5-7 s here): pay it once
# at collection, so that it is not charged to whichever test runs first (nor to every mutmut worker,
# which forks from a process that has collected the tests).
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))
