"""Reading results back: compare dictionaries, the HTML report, exports, and text renderings.
Imports store and label's pure scoring; never torch, llm or cli."""
