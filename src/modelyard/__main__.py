from modelyard.cli import app

app(prog_name="modelyard")
