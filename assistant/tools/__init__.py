"""What measures and fits the pipeline, beside it: `assistant eval`, `assistant fit`, `assistant bench`.

evaluation scores answers against question sets, reporting writes its report, fitting learns the
span ranker and the gates, benchmark times the commands. They call the pipeline's public functions
only; nothing in the pipeline imports them.
"""
