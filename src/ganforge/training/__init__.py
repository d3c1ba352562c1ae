"""Training: one loop (``loop``) drives every family through its recipe (``recipes``).

Modules, one concern each: ``loop`` (the loop), ``recipes`` (each family's state, D and G steps,
checkpoint entries and sample grid), ``state`` (TrainState, StepContext, EMA, TrainResult),
``checkpoints`` (save, restore, the resume checks), ``sampling`` (fixed noise, sample grids, class
names), ``batches`` (seeded batches and noise), ``dist`` (process groups, gradient averaging),
``errors``. ``ganforge.train`` re-exports the names callers used before this package existed.
"""
