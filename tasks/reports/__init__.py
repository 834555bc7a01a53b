"""Schedule result e-mails: a finished run's report, turned into one e-mail per recipient list
whose rule matches."""
