"""PRM-guided search: `engine.search(SearchConfig, Models, prompts, key, answer_of)`."""
