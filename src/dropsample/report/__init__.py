"""`dropsample report`: runs -> configurations -> tables, findings and plots.

    collect.py    find run folders, read them through RunFolder, group seeds into configurations
    findings.py   statements a results section would make, each with its evidence
    plots.py      the PNGs
    render.py     report.md, results.csv, the terminal table
    command.py    the command that ties them together
"""
