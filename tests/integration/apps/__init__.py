"""FastCGI applications the end-to-end tests put behind real web servers."""
