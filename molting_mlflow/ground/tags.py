"""The names molting writes on MLflow runs, trials and adapters, each named once: readers (diagnose,
rescore, the sweep's report, reuse) find what writers (train, evaluate, the sweep, tracking) put there
by these, not by repeating the string. Ground: imports nothing of the package."""

# run tags
STAGE_TAG = "molting.stage"                     # train | evaluate | sweep | rescore …: what made the run
MODEL_TAG = "molting.model"                     # the preset or model the run trained or scored
ERROR_TAG = "molting.error"                     # a FAILED or KILLED run's one-line reason ("interrupted": Ctrl-C)
PREFLIGHT_TAG = "molting.preflight"             # pre-flight's verdict: pass | warn | fail
EVAL_LEAK_TAG = "molting.eval_leak"             # "3/8": evaluation questions that are also training prompts
TRAIN_RUN_TAG = "molting.train_run_id"          # an evaluation of a trained adapter: the run that trained it
BASELINE_TAG = "molting.baseline"               # "true" on an evaluation of a bare model (no adapter)
RESPONSES_TAG = "molting.responses"             # a run of answers from elsewhere (score --log): their file
RESPONSES_MODEL = "responses"                   # … and its model tag
RUBRIC_VERSION_TAG = "molting.rubric_version"   # the rubric version its scores were computed under
TRIAL_STATE_TAG = "molting.trial_state"         # PRUNED on a sweep trial that stopped early
PRUNE_REASON_TAG = "molting.prune_reason"       # why, in words, for the reader of the UI
REUSED_RUN_TAG = "molting.reused_run_id"        # a reused trial: the finished run whose results it carries
ADAPTER_LOGGED_TAG = "molting.adapter_logged"   # "true" once a train run's adapter/ is whole: set before its evaluation
STUDY_TAG = "molting.study"                     # the Optuna study of a sweep run or trial
REFERENCE = "molting.reference"                 # a reference trial (user-original | preset-default): user attr and tag

# trace attributes (MLflow's evaluation view)
QUESTION_ID = "molting.question_id"
REASONS = "molting.reasons"                     # the rubric's reasons for the answer ("full points"): a trace tag,
                                                # which the Traces tab offers as a column (Columns → Tags)

# files
ADAPTER_DIR = "adapter"                         # a train run's artifact folder of its adapter (PEFT, tokenizer, persona)
ADAPTER_META = "molting.json"                   # beside adapter_config.json: base model, revision, template, persona
PREFLIGHT_ARTIFACT = "preflight.json"           # pre-flight's report, as JSON, on a train run
EVAL_LEAK_ARTIFACT = "eval_leak.json"           # an evaluate run's eval_leak finding, where its questions leaked

# registry
CHAMPION = "champion"                           # the alias of the best registered version


def adapter_uri(run_id: str) -> str:
    """The adapter of train run `run_id`, as MLflow names an artifact of a run."""
    return f"runs:/{run_id}/{ADAPTER_DIR}"
