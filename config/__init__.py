"""Configuration: process settings, the mail settings model, their store and secret crypto."""
