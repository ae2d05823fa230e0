from synthloop.cli import app

app(prog_name="synthloop")
