WHO = "beta helper"
