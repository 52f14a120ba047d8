"""What measures, fits and trains the pipeline, beside it: `assistant eval`, `fit`, `bench`, `train-reader`.

evaluation scores answers against question sets, reporting writes its report, fitting learns the
span ranker and the gates, benchmark times the commands, reader_data and reader_training make the
reader's examples and train and export it. They call the pipeline's public functions only; nothing
in the pipeline imports them.
"""
