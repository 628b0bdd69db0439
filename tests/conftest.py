import os
import sys

import torch

# The suite is small-model work: one thread avoids the 2-thread stalls seen on the CI machine.
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))
