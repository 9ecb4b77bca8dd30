"""`python -m orchestrator.knowledge > docs/causes.md`: the table as a document."""
from orchestrator.knowledge.document import causes_markdown

print(causes_markdown(), end="")
