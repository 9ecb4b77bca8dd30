rpm -qa --qf '%{NAME} %{VERSION}-%{RELEASE}\n'
