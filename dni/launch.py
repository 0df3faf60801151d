"""`torchrun [torchrun flags] -m dni.launch JOB [dni run flags]`: train a job with one stage per rank.

Rank r serves stage r; rank 0 also runs the coordinator, in a process of its own.
The logic lives in `dni.coordinator.elastic`; see README, "Several machines".
"""
from dni.coordinator.elastic import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
