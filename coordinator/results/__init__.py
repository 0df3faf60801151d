"""What a run leaves: its folder, plots and TensorBoard logs."""

__all__: list[str] = []
