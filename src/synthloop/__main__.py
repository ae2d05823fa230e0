from synthloop.cli.main import app

app(prog_name="synthloop")
