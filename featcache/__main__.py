"""`python -m featcache`, which torchrun runs: `torchrun --nproc-per-node N -m featcache extract ...`."""
from .cli import main

main(prog_name="featcache")
