"""``python -m serving.synth --out DIR [--n 16] [--seed 0] [--surfaces SEL]``: a contact sheet of samples."""
import sys

from serving.synth.dataset import main

sys.exit(main())
