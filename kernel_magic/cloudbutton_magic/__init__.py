"""IPython magics for cloudbutton."""
