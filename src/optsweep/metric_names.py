"""The names of the metrics a run logs, one place for the training code that writes them and the reports
that read them (a renamed metric breaks both at once, not silently the report)."""

VAL_LOSS = "val/loss"  # token-weighted mean loss over the validation tokens; the sweeps' objective
VAL_PPL = "val/ppl"
VAL_LOSS_PAPER = "val/loss_paper"  # the paper's estimator: sum of batch means / (batches + 1)
VAL_PPL_PAPER = "val/ppl_paper"
VAL_TOKENS = "val/tokens"
TRAIN_LOSS = "train/loss"
LR = "lr"  # the first group's; each role's as LR_OF_ROLE + role
LR_OF_ROLE = "lr/"
SKIPPED_STEPS = "train/skipped_steps"  # optimizer steps skipped for a non-finite gradient
TOKENS = "tokens/seen"  # nominal tokens, padding included, summed over ranks
TOKENS_NONPAD = "tokens/seen_nonpad"
THROUGHPUT = "throughput/tokens_per_s"
THROUGHPUT_PER_DEVICE = "throughput/tokens_per_s_per_device"
STEP_TIME = "throughput/step_time_s"
DATA_WAIT = "throughput/data_wait_frac"
MFU = "throughput/mfu"
PEAK_BYTES = "memory/peak_bytes"
STATE_BYTES = "optimizer/state_bytes"
MODEL_OPTIMIZER_BYTES = "memory/model_optimizer_bytes"
PARAMS = "model/params"
BAD_DOCUMENTS_SKIPPED = "data/bad_documents_skipped"  # lines skipped under data.on_bad_document=skip
