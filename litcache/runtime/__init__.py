"""What every stage runs on: the device, the compute precision, checkpoint files written whole, and
progress lines. Nothing here knows a recipe, a store or a student."""
