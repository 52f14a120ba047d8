"""assistant: offline question answering over a document, with verified citations.

Importing the package makes every later run offline: the variables below must be set before
tiktoken, huggingface_hub, chromadb or gradio are first imported, so they are set here.
"""

from assistant import offline

offline.apply()

__version__ = "0.1.0"
