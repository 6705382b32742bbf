"""Supervised fine-tuning of one role: examples and loss masks (`data`), training (`trainer`; checkpoints, logs and
the schedules are the shared ones of `longshort.run`)."""
